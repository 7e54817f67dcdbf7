"""``fracture-qi listen``: a service the PACS talks to.

* :mod:`.storage`: the storage area (the manifest's first folder source) and the durable
  record of every instance received (file first, then the database row, then the rename),
  with recovery after a crash.
* :mod:`.scp`: the DICOM storage SCP (pynetdicom) the PACS or a router forwards CTs to.
* :mod:`.orthanc`: the alternative feed for sites routing through Orthanc (its ``/changes``,
  ``StableStudy``).
* :mod:`.process`: what happens to a complete study: index, screen, send the results back
  into the PACS, refresh the worklist.
* :mod:`.service`: the loop that ties them together, its signals and its log.
"""
