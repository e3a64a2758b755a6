"""`k2 serve org/name` resolves the Hugging Face cache offline (issue 12.1): a fake cache tree made here."""
import json
import subprocess

from k2_api_server import TINY, Server, k2_bin


def make_cache(root, repo_id, commit="0123abcd"):
    org, name = repo_id.split("/")
    repo = root / "hub" / f"models--{org}--{name}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in TINY.iterdir():
        (snapshot / f.name).symlink_to(f.resolve())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_serve_resolves_hub_id_from_hf_home(tmp_path):
    snapshot = make_cache(tmp_path, "moonshotai/Kimi-K2-Instruct")
    server = Server(["moonshotai/Kimi-K2-Instruct"], env={"HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")},
                    log_name="hub")
    try:
        models = json.loads(server.get("/v1/models")[1])
        card = models["data"][0]
        assert card["id"] == "moonshotai/Kimi-K2-Instruct"
        assert card["root"] == str(snapshot)
    finally:
        assert server.stop() == 0, server.log_text()


def test_serve_missing_hub_id_says_where_it_looked(tmp_path):
    (tmp_path / "hub").mkdir()
    proc = subprocess.run([k2_bin(), "serve", "org/absent", "--port", "1"], capture_output=True, text=True,
                          env={"HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 1
    assert "models--org--absent" in proc.stderr and str(tmp_path / "hub") in proc.stderr, proc.stderr
    assert "huggingface-cli download org/absent" in proc.stderr, proc.stderr
