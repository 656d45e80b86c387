"""Networks: the plans-built nnU-Net network and the modules MASS adds around it."""
