"""The README documents what the programs really accept."""

from __future__ import annotations

from digitserve.server.settings import ServerSettings

from .conftest import REPO_ROOT


def test_every_server_setting_is_in_the_readme_table() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [
        name
        for name in ServerSettings.model_fields
        if f"`DIGITSERVE_{name.upper()}`" not in readme
        or f"`--{name.replace('_', '-')}" not in readme
    ]
    assert missing == [], "add these settings to the README's table"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_the_readme_sdk_example_runs(shared_server, mnist_test, tmp_path, monkeypatch) -> None:
    import io
    import re

    from PIL import Image

    readme = (REPO_ROOT / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert '"localhost:8500"' in example
    code = example.replace('"localhost:8500"', repr(shared_server.target))
    images = mnist_test[0]
    buf = io.BytesIO()
    Image.fromarray(255 - images[0]).resize((120, 120)).save(buf, "PNG")
    (tmp_path / "seven.png").write_bytes(buf.getvalue())
    monkeypatch.chdir(tmp_path)
    namespace = {
        "numpy_28x28_uint8": images[1],
        "list_of_images": list(images[:5]),
        "many_images": list(images[:20]),
    }
    exec(compile(code, "README.md", "exec"), namespace)  # the example as a reader runs it
    assert namespace["p"].model_name == "mnist"
    assert len(namespace["batch"]) == 5
