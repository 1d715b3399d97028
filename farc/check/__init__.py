"""The checking side of the pipeline: ONNX export of the float model, onnxruntime, the QDQ
reference, and `farc verify`, which compares the emulator with them. Import the submodules
directly (`farc.check.verify`); this package stays import-light."""
