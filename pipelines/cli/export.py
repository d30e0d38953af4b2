"""`wit export --openclip RUN OUT`: a trained model as a folder OpenCLIP loads."""
from __future__ import annotations

import argparse

from wit_builder.core import WitError

DESCRIPTION = (
    "Export a trained model for another library. --openclip writes OpenCLIP's hub layout: "
    "OUT/open_clip_pytorch_model.bin (the weights), OUT/bpe_simple_vocab.txt.gz (the run's "
    "merges, gzip) and OUT/open_clip_config.json (model_cfg with head_width and quick_gelu, "
    "preprocess_cfg), each written atomically. Load it with "
    "open_clip.create_model_and_transforms('local-dir:OUT') and "
    "open_clip.get_tokenizer('local-dir:OUT').")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN",
                        help="run directory (its checkpoints/latest.pt) or a checkpoint .pt file")
    parser.add_argument("out", metavar="OUT", help="folder to write")
    parser.add_argument("--openclip", action="store_true",
                        help="export for OpenCLIP (open_clip_torch); the only format so far")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in OUT")


def run(args) -> int:
    if not args.openclip:
        raise WitError("choose the format to export: --openclip")
    from trainer.export import export_openclip
    result = export_openclip(args.run, args.out, overwrite=args.overwrite)
    name = result["model_name"]
    print(f"wrote {result['out']}: {', '.join(f.rsplit('/', 1)[-1] for f in result['files'])} "
          f"from {result['checkpoint']} ({result['merges']} merges, quick_gelu "
          f"{str(result['model_cfg']['quick_gelu']).lower()})")
    print(f"OpenCLIP: open_clip.create_model_and_transforms('local-dir:{result['out']}'), "
          f"open_clip.get_tokenizer('local-dir:{result['out']}')"
          + (f"; or create_model('{name}', pretrained='{result['checkpoint']}')" if name else ""))
    return 0
