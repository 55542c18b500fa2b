"""`audiofind serve`: a local web page and JSON API to search the index, audition matches and take sounds away.

`library` shares the index and the text encoder between requests, `catalog` holds every SQL statement serve runs,
`app` routes requests behind `guard` (Host and token), `files`, `transcode` and `ranges` serve audio, `peaks` draws
waveforms, `page` renders the HTML, `server` runs uvicorn, and `speed` measures it all for `bench speed`.
"""
