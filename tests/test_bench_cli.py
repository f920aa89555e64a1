"""`mzs bench`: runs bench/ scripts via their `main(argv) -> str`, writes one Markdown file."""

from mzs_jax import bench_cli, cli


def test_bench_writes_markdown_with_machine_and_measured_table(tmp_path):
    out = tmp_path / "bench.md"
    assert cli.main(["bench", "--only", "phantom_speed", "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "Machine:" in text and "cores" in text
    rows = [r for r in text.splitlines() if r.startswith("| generate")]
    assert len(rows) == 3
    assert all(float(r.split("|")[-2]) > 0 for r in rows)  # samples/s measured, positive


def test_every_registered_script_exists_and_follows_the_protocol():
    for name in bench_cli.SCRIPTS:
        src = (bench_cli.bench_dir() / f"{name}.py").read_text()
        assert "def main(argv" in src, name
