"""Two studies in one process each log to their own store: mlflow.set_tracking_uri also writes
MLFLOW_TRACKING_URI into os.environ, which the config reads first, so without care the second study's
runs went to the first study's store."""
import os

from pipeline.config import load_config
from pipeline.core import tracking


def test_two_studies_in_one_process_keep_their_own_stores(tmp_path, monkeypatch, toyworld):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = (load_config("configs/smoke.yaml", {"output_dir": str(tmp_path / d)}) for d in ("a", "b"))
    tracking.client(a)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert tracking.tracking_uri(b) == f"sqlite:///{(tmp_path / 'b').resolve()}/mlflow.db"
    run = tracking.start_stage(b, "problems", "k")
    assert tracking.client(b).get_run(run).info.run_id == run
    assert (tmp_path / "b" / "mlflow.db").is_file()
