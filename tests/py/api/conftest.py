"""Session fixtures: the tiny-model server and the scripted-model server (see k2_api_server.py)."""
import json

import pytest

from k2_api_server import API_KEY, MAX_BODY_BYTES, MAX_MODEL_LEN, SCRIPT, TINY, Server


@pytest.fixture(scope="session")
def tiny_server():
    server = Server([str(TINY), "--served-model-name", "tiny", "tiny-alias", "--api-key", API_KEY,
                     "--max-model-len", str(MAX_MODEL_LEN), "--max-request-body-bytes", str(MAX_BODY_BYTES),
                     "--enable-log-requests"], log_name="tiny")
    yield server
    code = server.stop()
    assert code == 0, server.log_text()


@pytest.fixture(scope="session")
def scripted_server(tmp_path_factory):
    script = tmp_path_factory.mktemp("script") / "script.json"
    script.write_text(json.dumps(SCRIPT))
    server = Server([str(TINY), "--served-model-name", "scripted", "--test-scripted-output", str(script),
                     "--enable-auto-tool-choice", "--tool-call-parser", "kimi_k2", "--max-num-seqs", "256"],
                    env={"K2_ENABLE_TEST_MODEL": "1"}, log_name="scripted")
    yield server
    code = server.stop()
    assert code == 0, server.log_text()
