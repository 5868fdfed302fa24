"""The restore job: every video under an input URL restored into an output URL, resumable through its ledger
(pipeline.py is the driver; dataset.py reads top to bottom: sources -> scenes -> restore; gather.py assembles each video as its
windows come back)."""
