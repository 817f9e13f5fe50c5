"""Trust, measured on a real labelled task: scikit-learn's handwritten digits (1,797 8x8
images, 1,437 train / 360 held out, stratified), a small CNN (`builtin:digits-cnn`) trained
by `slimforge.train.fit`.

- Non-private vs DP-SGD (Opacus: per-example clipping at 1.0, noise for a target epsilon
  of 8 at delta 1e-5 over the run's steps, Poisson-sampled batches of 64 on average): test
  accuracy of each, and the epsilon the accountant reports as spent.
- Standard vs PGD adversarial training (L-inf eps in pixel units of [0, 1], 10 PGD steps of
  2.5 eps / 10 while training): clean accuracy and accuracy under a stronger PGD at
  evaluation (20 steps, random start) and under FGSM, on the 360 held-out images.

Every model starts from the same seeded initialisation and sees the same number of steps
(the DP run's batches are Poisson draws of the same expected size). Ends stdout with one
JSON line. Not collected by pytest.

    .venv/bin/python benchmarks/trust.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _train(steps: int, lr: float, **options) -> tuple:
    import torch

    from slimforge.data.sources import digits_records
    from slimforge.models.load import load_model
    from slimforge.train.config import TrainConfig
    from slimforge.train.engine import fit
    from slimforge.train.objectives import Classify

    model = load_model("builtin:digits-cnn").model
    config = TrainConfig(max_steps=steps, batch_size=64, lr=lr, warmup_steps=10,
                         precision="fp32", clip_norm=None if "privacy" in options else 1.0,
                         **options)
    with tempfile.TemporaryDirectory() as folder:
        result = fit(model, digits_records("train"), Classify(torch.device("cpu")), config,
                     folder)
    return model, result


def _figures(model, attack) -> dict:
    import torch

    from slimforge.data.sources import digits_records
    from slimforge.train.objectives import Classify
    from slimforge.trust.attacks import robust_accuracy

    return robust_accuracy(model, Classify(torch.device("cpu")), digits_records("eval"), attack)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dp-lr", type=float, default=5e-3,
                        help="DP-SGD learning rate (noisy steps take a larger one)")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--eps", type=float, default=0.15, help="PGD radius (pixels in [0, 1])")
    args = parser.parse_args()

    import torch

    from slimforge.trust.attacks import AttackConfig
    from slimforge.trust.privacy import PrivacyConfig

    torch.set_num_threads(2)
    started = time.time()
    train_attack = AttackConfig(eps=args.eps, steps=10, low=0.0, high=1.0)
    eval_pgd = AttackConfig(eps=args.eps, steps=20, low=0.0, high=1.0, seed=1)
    eval_fgsm = AttackConfig(method="fgsm", eps=args.eps, low=0.0, high=1.0)
    rows = {}
    for name, lr, options in (
        ("standard", args.lr, {}),
        ("dp-sgd", args.dp_lr, {"privacy": PrivacyConfig(target_epsilon=args.epsilon,
                                                         delta=1e-5)}),
        ("pgd adversarial", args.lr, {"adversarial": train_attack}),
    ):
        model, result = _train(args.steps, lr, **options)
        pgd, fgsm = _figures(model, eval_pgd), _figures(model, eval_fgsm)
        rows[name] = {"clean_accuracy": pgd["clean_accuracy"],
                      "pgd_accuracy": pgd["robust_accuracy"],
                      "fgsm_accuracy": fgsm["robust_accuracy"],
                      "train_seconds": result.seconds, "privacy": result.privacy}
        print(f"{name}: clean {pgd['clean_accuracy']:.4f}, PGD {pgd['robust_accuracy']:.4f}, "
              f"FGSM {fgsm['robust_accuracy']:.4f}, {result.seconds:.0f} s"
              + (f", epsilon {result.privacy['epsilon']:.3f}" if result.privacy else ""),
              file=sys.stderr)
    dp = rows["dp-sgd"]["privacy"]
    print(json.dumps({
        "dp_epsilon": dp["epsilon"], "dp_delta": dp["delta"],
        "dp_noise_multiplier": dp["noise_multiplier"],
        "dp_accuracy": rows["dp-sgd"]["clean_accuracy"],
        "nonprivate_accuracy": rows["standard"]["clean_accuracy"],
        "pgd_eps": args.eps, "pgd_eval_steps": eval_pgd.steps,
        "robust_accuracy_standard": rows["standard"]["pgd_accuracy"],
        "robust_accuracy_adversarial": rows["pgd adversarial"]["pgd_accuracy"],
        "clean_accuracy_adversarial": rows["pgd adversarial"]["clean_accuracy"],
        "rows": rows, "steps": args.steps, "seconds": round(time.time() - started),
        "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
