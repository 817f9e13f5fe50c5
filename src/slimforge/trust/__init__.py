"""Trustworthy models: adversarial attacks and training, differential privacy, fairness, and
protected (encrypted, signed) artifacts."""
