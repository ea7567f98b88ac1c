"""`quantcli version`: versions and the active quantization backend."""
# no `from __future__ import annotations`: typer would compile every string annotation at each start


from ._common import JsonOpt, out, print_json, run


def version(json: JsonOpt = False) -> None:
    """Show quantcli's version, the active backend (QUANTCLI_BACKEND), the C kernels' instruction set (QUANTCLI_ISA)
    and the versions of its key libraries.

    [bold]Example[/]: quantcli version --json
    """
    def body() -> None:
        import importlib.metadata as md

        from .. import __version__
        from ..quant.backend import get_backend

        backend = get_backend()
        # the kernels' instruction-set variant (QUANTCLI_ISA forces a lower one); None on the NumPy reference
        info = {"quantcli": __version__, "backend": backend.name, "kernels isa": backend.isa}
        for pkg in ("gguf", "numpy", "safetensors", "huggingface_hub"):
            try:
                info[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                info[pkg] = None
        if json:
            print_json(info)
        else:
            for k, v in info.items():
                out.print(f"{k}: {v}", highlight=False)

    run(body)
