"""Building blocks shared by the technique packages (``prune``, ``quant``, ``recover``), each in one place:

- :mod:`~edgecompress.nn.layers`: the Conv/Linear layers, the depthwise test, torch-pruning's dependency graph;
- :mod:`~edgecompress.nn.bn`: BatchNorm folding and BatchNorm statistics re-estimation;
- :mod:`~edgecompress.nn.capture`: watching one forward pass (a layer's input and/or output, the layers' call order);
- :mod:`~edgecompress.nn.im2col`: a Conv's input patches as rows of a matrix;
- :mod:`~edgecompress.nn.sequential`: layer-by-layer calibration, block by block (GPTQ, mimic, bias correction);
- :mod:`~edgecompress.nn.rebuild`: modules a stage inserts (factorized layers, exit heads), rebuilt by checkpoints.

Technique packages may import ``nn`` but not each other; ``nn`` imports no technique package
(``tests/test_architecture.py`` checks both).
"""
