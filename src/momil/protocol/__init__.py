"""The paper's protocol: cross-validation, assay selection, label imputation, few-shot probes, the benchmark."""
