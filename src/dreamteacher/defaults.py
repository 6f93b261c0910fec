"""Constants that the configs and the code that uses them share, importable without torch
(the command line's --help and argument errors import no numerical library).

The paper's loss weights (docs/method.md, "Losses") and the names of the self-supervised
baselines; losses.py and baselines/ssl.py read them from here.
"""

LAMBDA_AT = 10.0  # of L_AT in L_feat
# what L_AT compares with the teacher's raw maps: the regressor's predictions (as the paper's
# L_feat writes it) or the backbone's own stage outputs C2..C5 (channel-agnostic, as in
# Zagoruyko & Komodakis 2017, where AT acts on the network's activations)
AT_SOURCES = ("regressor", "backbone")
LAMBDA_LD = 1.0  # of L_ld in L_mix
TAU = 4.0  # softmax temperature of L_ld
DICE_WEIGHT = 3.0  # of Dice in the interpreter's CE + Dice
SSL_METHODS = ("simclr", "mocov2", "byol", "densecl")  # baselines/ssl.py
