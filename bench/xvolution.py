"""X-volution forward latency in eval mode: training form vs deployed form vs a plain K×K conv.

The deployed form is one convolution over [X, T(X)] ((1 + |D|)·Ci input channels): its
bound is that convolution alone on a ready input ("wide conv"); the plain conv (Ci -> Co,
same K) is for scale.  Same run, same process, best of --repeat.

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, CASES)
    args = parse_common_args(p)
    import translution_ext
    from translution_ext.nn import XVolution

    dev, dtype = args.device, getattr(torch, args.dtype)
    results = []
    print(f"X-volution eval forward, {dev} ({device_name(dev)}), {args.dtype}, B={args.batch}, K=3, |D|=8")
    print(f"{'case':12} {'training ms':>12} {'deployed ms':>12} {'wide conv ms':>13} {'plain conv ms':>14} "
          f"{'deployed/wide':>14}")
    for case in args.cases:
        c, hw = CASES[case]
        torch.manual_seed(0)
        model = XVolution(c, c, 3).to(dev, dtype).eval()
        deployed = translution_ext.reparameterize_model(model)
        conv = torch.nn.Conv2d(c, c, 3, padding=1).to(dev, dtype).eval()
        wide = deployed.deployed_conv
        x = torch.randn(args.batch, c, hw, hw, device=dev, dtype=dtype)
        xw = torch.randn(args.batch, wide.in_channels, hw, hw, device=dev, dtype=dtype)
        with torch.no_grad():
            t_train = timed(lambda: model(x), dev, args.repeat)
            t_dep = timed(lambda: deployed(x), dev, args.repeat)
            t_wide = timed(lambda: wide(xw), dev, args.repeat)
            t_conv = timed(lambda: conv(x), dev, args.repeat)
        r = dict(case=case, channels=c, size=hw, training_s=t_train, deployed_s=t_dep, wide_conv_s=t_wide,
                 plain_conv_s=t_conv, deployed_over_wide_conv=t_dep / t_wide, training_over_deployed=t_train / t_dep)
        results.append(r)
        print(f"{case:12} {t_train*1e3:12.2f} {t_dep*1e3:12.2f} {t_wide*1e3:13.2f} {t_conv*1e3:14.2f} "
              f"{t_dep/t_wide:14.2f}")
    out = write_results("xvolution", dev, args.dtype, {"batch": args.batch, "kernel_size": 3,
                                                       "shift_lengths": [1]}, results, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
