"""Reference solutions of the tutorials' "Your job" exercises, one file per exercise.

Try the exercise in the notebook first: its check cell grades what you wrote. A notebook whose exercise is
still open (the stub raises ``NotImplementedError``) grades and then uses the solution from here, so that it
runs top to bottom (this is how the committed notebooks and CI run). See ``tutorials/exercises.py``.
"""
