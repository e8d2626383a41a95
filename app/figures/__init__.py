"""Figure builders: pure functions, data in, a new `go.Figure` out (testable without a browser).

One submodule per tab (`app.figures.model`, `app.figures.tokens`, ...). They take numpy
arrays, lists and strings (user text goes into plotly text fields as data, never HTML) and
never touch gradio, models or files.
"""
