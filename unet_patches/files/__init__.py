"""Image files for prediction, read and written a band of rows at a time so that memory does not
grow with the image: sources, writers, the output formats, a job's files and its shards.

- :mod:`.rows`: the ``RowSource`` interface, sources in memory, normalised sources, chunked arrays;
- :mod:`.sources`: TIFF (pages, pyramid levels) and Zarr files as row sources, header limits;
- :mod:`.slides`: whole-slide images through OpenSlide;
- :mod:`.writers`: ``Band`` (finished rows of a prediction) and the band writers (PNG, NPY, TIFF,
  OME-TIFF, Zarr);
- :mod:`.row_blocks`: bands regrouped into blocks of a fixed height (Zarr chunk rows, TIFF tile rows);
- :mod:`.shared_zarr`: one Zarr store filled by several processes, each its own chunk rows;
- :mod:`.formats`: the output formats, one registry row each;
- :mod:`.plan`: inputs expanded, outputs planned and checked, one image's bands written to its files;
- :mod:`.shards`: a job's files split between processes, the shard reports.

No torch here.
"""
