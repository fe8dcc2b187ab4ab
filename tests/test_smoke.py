import subprocess
import sys

from sparse_attn import opspec


def test_op_identity():
    assert opspec.QUALIFIED_NAME == "sparse_attn::BlockSparseAttention"
    assert opspec.OP_VERSION == 1 and opspec.PLUGIN_VERSION == "1"


def test_cli_unknown_command_exit_2():
    p = subprocess.run(
        [sys.executable, "-m", "sparse_attn.cli", "no-such-command"], capture_output=True, text=True
    )
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "error" in p.stderr


def test_cli_exit_code_of_ctx_exit_is_kept():
    import click

    from sparse_attn import cli as cli_mod

    @cli_mod.cli.command("_exit3", hidden=True)
    @click.pass_context
    def _exit3(ctx):
        ctx.exit(3)

    try:
        assert cli_mod.main(["_exit3"]) == 3
    finally:
        cli_mod.cli.commands.pop("_exit3", None)
