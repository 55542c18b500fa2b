"""`audiofind serve`: a local web page and JSON API to search the index, audition matches and take sounds away.

`library` shares the index (through the store protocol) and the text encoder between requests, `app` routes
requests behind `guard` (Host and token), `params` reads their query strings, `files`, `transcode` and `ranges`
serve audio, `peaks` draws waveforms, `page` renders the HTML and `server` runs uvicorn; `bench.serve` measures it.
"""
