import os

# Triton (and so fla) computes float32 dot products in TF32 on Ampere and newer unless told otherwise;
# the GPU tier checks the kernels' math against float64 references, so it asks for IEEE float32.
# (Must be set before triton compiles anything.)
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")
