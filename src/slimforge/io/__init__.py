"""Reading and writing artifacts safely: atomic writes, hashed manifests, safetensors."""
