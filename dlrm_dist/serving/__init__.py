"""Serving: a trained checkpoint as an unsharded inference program (torch.export), and scoring.

model.py (the inference module: plain embedding bags, float or int8 row-wise, and the
trained dense part) -> export.py (checkpoint -> DIR/model.pt2 + DIR/export.json) ->
load.py (checks and loads an export with torch alone) -> predict.py (batch scoring of a
data directory). The CLIs are dlrm-export and dlrm-predict (cli/).
"""
