"""bench crossview's summary: which first verdicts count as found, missed or a false accusation, per workload."""

from __future__ import annotations

from enmei.bench.crossview import HIDDEN_MODULE, Session, summarize


def trial(verdict: str | None, pid: int | None = None, module: str | None = None) -> dict[str, object]:
    return {"verdict": verdict, "pid": pid, "module": module, "detect_s": 3.0, "evidence": {}}


def test_each_workload_is_judged_by_its_own_truth() -> None:
    churn = Session("churn", 256, False, trials=[trial("clean"), trial("hidden_module", module="cv_benign")])
    task = Session("hide-task", 256, False, hidden_pid=40,
                   trials=[trial("hidden_process", pid=40), trial("hidden_process", pid=41)])
    mod = Session("hide-module", 512, True,
                  trials=[trial("hidden_module", module=HIDDEN_MODULE), trial("inconclusive")])
    out = summarize([churn, task, mod])
    assert out["trials"] == 6
    assert out["tpr"] == 0.5  # 2 found of 4 specimen trials (pid 41 and the inconclusive one missed)
    assert out["fpr"] == round(2 / 3, 3)  # the benign module accused in churn, pid 41 accused in hide-task
    assert out["by_specimen"]["hide-module"]["found"] == 1
    assert out["by_specimen"]["hide-module"]["inconclusive"] == 1
    assert out["by_specimen"]["churn"]["accused"] == 1
