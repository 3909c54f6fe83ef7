"""X-volution forward latency in eval mode: training form vs deployed form (the xvolution_deployed op)
vs a plain 3x3 conv doing the same useful MACs, for Ka = 1 (the default) and Ka = K = 3.

Useful MACs per output pixel: K²·Ci·Co + Ka²·|D|·Ci·Co.  The same-MACs conv is a 3x3 conv with
round(Ci·(9 + Ka²·|D|) / 9) input channels; the folded conv alone on a ready [X, T(X)] ("wide
conv": how the deployed form ran before the op, at least) and a plain Ci -> Co conv are for scale.
Same run, same process, best of --repeat.

    python bench/xvolution.py                   # CPU, fp32, B = 8
    python bench/xvolution.py --device cuda
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import add_common_args, device_name, parse_common_args, timed, write_results  # noqa: E402

CASES = {"c64_56x56": (64, 56), "c128_28x28": (128, 28), "c256_14x14": (256, 14)}
SHIFTS = 8  # |D|: one shift length


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, CASES)
    args = parse_common_args(p)
    import translution_ext
    from translution_ext.nn import XVolution

    dev, dtype = args.device, getattr(torch, args.dtype)
    results = []
    print(f"X-volution eval forward, {dev} ({device_name(dev)}), {args.dtype}, B={args.batch}, K=3, |D|={SHIFTS}")
    print(f"{'case':12} {'Ka':>2} {'training ms':>12} {'deployed ms':>12} {'same-MACs conv ms':>18} "
          f"{'wide conv ms':>13} {'plain conv ms':>14} {'dep/train':>10} {'dep/same-MACs':>14}")
    for case in args.cases:
        c, hw = CASES[case]
        for ka in (1, 3):
            torch.manual_seed(0)
            model = XVolution(c, c, 3, pssa_kernel_size=ka).to(dev, dtype).eval()
            deployed = translution_ext.reparameterize_model(model)
            same = torch.nn.Conv2d(round(c * (9 + ka * ka * SHIFTS) / 9), c, 3, padding=1).to(dev, dtype).eval()
            conv = torch.nn.Conv2d(c, c, 3, padding=1).to(dev, dtype).eval()
            wide = deployed.deployed_conv
            x = torch.randn(args.batch, c, hw, hw, device=dev, dtype=dtype)
            xs = torch.randn(args.batch, same.in_channels, hw, hw, device=dev, dtype=dtype)
            xw = torch.randn(args.batch, wide.in_channels, hw, hw, device=dev, dtype=dtype)
            with torch.no_grad():
                t_train = timed(lambda: model(x), dev, args.repeat)
                t_dep = timed(lambda: deployed(x), dev, args.repeat)
                t_same = timed(lambda: same(xs), dev, args.repeat)
                t_wide = timed(lambda: wide(xw), dev, args.repeat)
                t_conv = timed(lambda: conv(x), dev, args.repeat)
            r = dict(case=case, channels=c, size=hw, pssa_kernel_size=ka, training_s=t_train, deployed_s=t_dep,
                     same_macs_conv_s=t_same, same_macs_conv_in_channels=same.in_channels, wide_conv_s=t_wide,
                     plain_conv_s=t_conv, deployed_over_training=t_dep / t_train,
                     deployed_over_same_macs_conv=t_dep / t_same)
            results.append(r)
            print(f"{case:12} {ka:2} {t_train*1e3:12.2f} {t_dep*1e3:12.2f} {t_same*1e3:18.2f} {t_wide*1e3:13.2f} "
                  f"{t_conv*1e3:14.2f} {t_dep/t_train:10.2f} {t_dep/t_same:14.2f}")
    out = write_results("xvolution", dev, args.dtype, {"batch": args.batch, "kernel_size": 3, "shift_lengths": [1],
                                                       "pssa_kernel_sizes": [1, 3]}, results, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
