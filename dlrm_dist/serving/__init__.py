"""Serving: a trained checkpoint as an unsharded inference program (torch.export), and scoring.

model.py (the inference module: plain embedding bags, float or int8 row-wise, and the
trained dense part) -> export.py (checkpoint -> DIR/model.pt2 + DIR/export.json) ->
load.py (checks and loads an export with torch and pydantic alone: manifest.py declares
export.json, archive.py proves model.pt2 is data before torch.export.load reads it) ->
predict.py (batch scoring of a data directory checked against the model's schema).

Raw rows: export.py also copies the fitted pipeline's vocabularies into the export
(pipeline.py, checked at load); records.py reads raw rows (a list of dicts; row_files.py: JSON lines, or a
CSV/TSV/Parquet file) as preprocessing read them; predictor.py (``Predictor``, no TorchRec)
encodes them with data/columnar/encode.py and scores them; score_rows.py is dlrm-predict
--input's streaming loop. server.py + batcher.py serve them over HTTP. The CLIs are dlrm-export, dlrm-predict and dlrm-serve (cli/).
"""
