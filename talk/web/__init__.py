"""The local web page (`talk serve`): a Gradio front end over one ``TalkPipeline`` per server.

``config`` is the ``serve`` section of params.yaml, ``service`` checks a page's inputs and renders
them with the pipeline (no Gradio import), ``page`` lays out the page and runs the server.
"""
