import subprocess
import sys


def test_lmcore_imports_no_orchestration_tool():
    code = (
        "import sys, lmcore, lmcore.train, lmcore.evaluate, lmcore.generate, lmcore.checkpoint, lmcore.tokenizer, "
        "lmcore.data, lmcore.models, lmcore.lora, lmcore.text_to_text, lmcore.__main__\n"
        "bad = [m for m in ('mlflow', 'prefect', 'dvc', 'great_expectations', 'yaml') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
