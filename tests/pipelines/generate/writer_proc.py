"""A generation job in its own process, for the concurrency and crash tests.

    python -m tests.pipelines.generate.writer_proc '{"output": ..., "model_dir": ..., "generate": {...}}'

Prints one JSON line: {"ok": true, "rows": ..., "dataset_dir": ...} or {"ok": false, "error": "<one line>"}
and exits 0 or 2. With "storage_options" the output is on that store (e.g. the moto S3 server).
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    args = json.loads(sys.argv[1])
    import torch

    torch.set_num_threads(1)
    from pipelines.errors import USER_ERRORS
    from pipelines.generate import generate
    from tests.pipelines.generate.helpers import make_cfg

    gen = dict(args.get("generate", {}))
    if args.get("storage_options"):
        gen["storage_options"] = args["storage_options"]
    cfg = make_cfg(args["output"], **gen)
    print(json.dumps({"started": True}), flush=True)
    try:
        res = generate(cfg, model_dir=args["model_dir"], progress=False, use_ray=False)
    except USER_ERRORS as exc:
        print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
        return 2
    print(json.dumps({"ok": True, "rows": res.rows, "dataset_dir": res.dataset_dir}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
