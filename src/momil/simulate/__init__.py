"""Simulated screens in the input contract, for demos, tests and benchmarks (`momil simulate`)."""

from momil.simulate.screen import (
    CHANNELS,
    DMSO,
    SimulateSettings,
    World,
    analogue_smiles,
    build_world,
    compound_classes,
    data_path,
    hti_cnn_labels,
    hti_cnn_smiles,
    plate_layout,
    ppi_network,
    real_platemap,
    render_field,
    simulate,
    simulate_labels,
    well_instances,
)
