"""`k2 serve` with no MODEL serves the demo model (models/kimi-k2-demo) as "kimi-k2-demo": the official openai
client lists it and gets an English reply that ends at <|im_end|> (finish_reason "stop")."""
import re

import openai
import pytest

from k2_api_server import REPO, Server


@pytest.fixture(scope="module")
def demo_server():
    server = Server(["--max-model-len", "1024"], log_name="demo")
    yield server
    assert server.stop() == 0, server.log_text()


def test_default_model_is_served_and_answers_in_english(demo_server):
    client = openai.OpenAI(base_url=demo_server.base + "/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["kimi-k2-demo"]
    assert str(REPO / "models" / "kimi-k2-demo") in demo_server.log_text()
    r = client.chat.completions.create(model="kimi-k2-demo", temperature=0, max_tokens=100,
                                       messages=[{"role": "user", "content": "What does the file system do?"}])
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice
    words = re.findall(r"[A-Za-z]+", choice.message.content)
    assert len(words) >= 5, choice.message.content
    assert "<|" not in choice.message.content
