"""Serving: a trained checkpoint as an unsharded inference program (torch.export), and scoring.

model.py (the inference module: plain embedding bags, float or int8 row-wise, and the
trained dense part) -> export.py (checkpoint -> DIR/model.pt2 + DIR/export.json) ->
load.py (checks and loads an export with torch and pydantic alone: manifest.py declares
export.json, archive.py proves model.pt2 is data before torch.export.load reads it) ->
predict.py (batch scoring of a data directory checked against the model's schema). The
CLIs are dlrm-export and dlrm-predict (cli/).
"""
