"""The column names of the input contract (pycytominer's Metadata_ convention)."""

PLATE, WELL, BATCH, COMPOUND, CONTROL, SITE = (
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_Batch",
    "Metadata_Compound",
    "Metadata_ControlType",
    "Metadata_Site",
)
SMILES, INCHIKEY = "Metadata_SMILES", "Metadata_InChIKey"
CONTROL_TYPES = ("negcon", "poscon", "trt")
