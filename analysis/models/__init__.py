"""Model families behind one seam (:mod:`analysis.models.base`): ``geneformer/`` (HF BERT, rank-value tokens) and
``scgpt/`` (native whole-human scGPT, binned values). Each family package exports ``Adapter`` (a
:class:`~analysis.models.base.ModelAdapter` with ``from_pretrained``) and ``train_tiny`` (the embedded default's tiny
model of that architecture, saved in the family's release layout)."""

FAMILIES = {"geneformer": "analysis.models.geneformer", "scgpt": "analysis.models.scgpt"}   # family -> package
