"""Classical reconstructions (FBP, zero-filled, Wiener, SIRT, CGLS, TV, CG-SENSE, l1-wavelet,
Richardson-Lucy): the baselines every diffusion result is compared against."""

from invdiff.classical.methods import METHODS, ClassicalMethod, get_method, method_names, methods_for, run_method

__all__ = ["METHODS", "ClassicalMethod", "get_method", "method_names", "methods_for", "run_method"]
