"""From predictions to numbers and files: slice-wise inference, resizing, the 3D metrics, the
checks of evaluation items, the run's ``Evaluator``, overlay panels and prediction files.
Importing this package (and ``inference``, ``metrics``) imports no Lightning."""
