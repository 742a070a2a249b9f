"""The pieces of the report that reproduce one paper's own tables and figures, one module per paper.

Everything else in ``harness.report`` reads the method registry and the records: a new method or
study shows up there without an edit. What is here names the methods a paper compares, or the order
its figure draws them in, and reproduces that paper, nothing more.

* ``cocoop``: the CoCoOp paper (Zhou et al., CVPR 2022): Table 5, Figure 3, CoCoOp minus CoOp per
  transfer target.
* ``coop``: the CoOp paper (Zhou et al., IJCV 2022): the method order of its few-shot figure.
"""
