"""The corpus loaders of ``enmei bench detect`` on small files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from enmei.bench import corpora


def test_telemanom_and_ucr_files_become_nab_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tele = tmp_path / "telemanom"
    (tele / "test").mkdir(parents=True)
    np.save(tele / "test" / "A-1.npy", np.column_stack([np.arange(1000.0), np.zeros(1000)]))
    np.save(tele / "test" / "M-1.npy", np.column_stack([np.arange(500.0), np.ones(500)]))
    (tele / "labeled_anomalies.csv").write_text(
        'chan_id,spacecraft,anomaly_sequences,class,num_values\n'
        'A-1,SMAP,"[[100, 109], [500, 800]]","[point, contextual]",1000\n'
        'M-1,MSL,"[[495, 520]]",[point],500\n'
        'A-1,SMAP,"[[900, 999]]",[point],1000\n')  # a channel listed twice: its labels are united
    (tmp_path / "ucr").mkdir()
    ucr_text = "\n".join(str(float(i)) for i in range(1000))
    (tmp_path / "ucr" / "001_UCR_Anomaly_Test_300_400_404.txt").write_text(ucr_text)
    (tmp_path / "ucr" / "notes.txt").write_text("not a series")
    monkeypatch.setenv("ENMEI_DATA_DIR", str(tmp_path))
    assert corpora.default_data_dir() == tmp_path
    (smap,) = corpora.load("smap")
    assert smap.name == "smap/A-1" and smap.values[:3].tolist() == [0.0, 1.0, 2.0]
    # A narrow label is widened to 10 % of the file / its 3 labels = 33 rows, centred; wide ones kept.
    assert smap.windows == ((89, 121), (500, 800), (900, 999))
    assert smap.seconds()[1] - smap.seconds()[0] == 60.0
    (msl,) = corpora.load("msl")
    assert msl.windows == ((483, 499),)  # widened to 50 rows (483..532), cut at the end of the file
    (ucr,) = corpora.load("ucr")
    assert ucr.name == "ucr/Test" and len(ucr.values) == 1000
    assert ucr.windows == ((352, 451),)  # 1-based 400..404 is rows 399..403, widened to 100 rows
    with pytest.raises(KeyError, match="known: nab, smap, msl, ucr"):
        corpora.load("yahoo")
    with pytest.raises(FileNotFoundError, match="no UCR"):
        corpora.load_ucr(tmp_path / "nowhere")
