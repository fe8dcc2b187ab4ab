"""``sparse-attn`` command line (SPEC section 3). Thin: parse, call the library, print.

Each subcommand lives in its own module ``sparse_attn.cli.<name>_cmd`` exposing a click
command named ``command``; modules are imported only when their command runs, so
``sparse-attn layout`` does not pay for torch or onnx imports it does not need.

Errors: one line on stderr; exit code 2 for bad input, 1 for the environment.
"""

from __future__ import annotations

import importlib
import sys

import click

from sparse_attn.errors import SparseAttnError

#: command name -> (module, one-line help)
COMMANDS = {
    "layout": (
        "sparse_attn.cli.layout_cmd",
        "Compile a pattern to a block layout; stats, mask, plot.",
    ),
    "export": ("sparse_attn.cli.export_cmd", "Export a model with sparse attention to ONNX."),
    "engine": (
        "sparse_attn.cli.engine_cmd",
        "Build a TensorRT engine or an ONNX Runtime optimised model.",
    ),
    "run": ("sparse_attn.cli.run_cmd", "Run an exported model or engine on texts or inputs."),
    "check": (
        "sparse_attn.cli.check_cmd",
        "Check a model's accuracy against the PyTorch reference.",
    ),
    "bench": ("sparse_attn.cli.bench_cmd", "Benchmark sparse attention against the alternatives."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return super().get_command(ctx, name)
        module = importlib.import_module(COMMANDS[name][0])
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(k, v[1]) for k, v in COMMANDS.items()])


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sparse-attn")
def cli() -> None:
    """sparse-attn: block-sparse attention from PyTorch to ONNX, TensorRT and serving."""


def _fail(message: str, code: int) -> int:
    click.echo(f"sparse-attn: error: {' '.join(str(message).split())}", err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    try:
        # With standalone_mode=False click returns (not raises) the code of ctx.exit(n).
        rc = cli.main(args=argv, prog_name="sparse-attn", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        return _fail("aborted", 1)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        return _fail(exc.format_message() + hint, 2)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code or 1)
    except SparseAttnError as exc:
        return _fail(str(exc), exc.exit_code)
    except FileNotFoundError as exc:
        return _fail(f"{exc}; check the path", 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
