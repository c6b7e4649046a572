"""Turn trained torch modules into files a device runs: ONNX (fp32 and int8) and TFLite."""
