"""A foreign process holding most of a GPU: what admission control must live with on a shared card.

    python -m bench.foreign_memory --leave-bytes 12000000000 [--device 0]

Allocates the card's free memory less `--leave-bytes` in one block, prints one JSON line (what it holds, what
is free after), and holds it until its stdin closes. A plain torch allocation: to NVML it is another process.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    """Hold the memory until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leave-bytes", type=int, required=True, help="free memory to leave on the card")
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device("cuda", args.device)
    free, total = torch.cuda.mem_get_info(device)
    hold = max(free - args.leave_bytes, 0)
    block = torch.empty(hold, dtype=torch.uint8, device=device)
    block.fill_(1)  # touched, so no driver can defer backing it
    torch.cuda.synchronize(device)
    free_after, _ = torch.cuda.mem_get_info(device)
    print(
        json.dumps(
            {"held_bytes": hold, "free_before_bytes": free, "free_after_bytes": free_after, "total_bytes": total}
        )
    )
    sys.stdout.flush()
    sys.stdin.read()  # until the parent closes the pipe (or dies)
    del block
    return 0


if __name__ == "__main__":
    sys.exit(main())
