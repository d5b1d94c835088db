"""Export a playground's model as TorchScript, ``torch.export`` or ONNX and check it against the
eager model (``dl_export``): see ``dl_lib/tools/export.py``.

    cd playground/<Group>/<Name>
    python ../../../tools/export.py --format torchscript|export|onnx --size H W --out FILE \
        [MODEL.WEIGHTS ckpt]
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, REPO)

from dl_lib.tools.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
