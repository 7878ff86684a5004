"""The web page: a person's way to the model (choose, drop or paste a photo, or use the
webcam; see each face's emotion, its probabilities and where the network looked).

Served by ``fer-serve`` at ``/`` on its REST port, and by ``fer-pipeline web --url`` in front
of any TF Serving REST endpoint. Its backend (:mod:`serving.web.app`) reaches the model only
through TF Serving's REST contract; its assets (``static/``) are plain HTML, JavaScript and
CSS, served from the package, with no build step and nothing fetched from elsewhere.
"""
