"""Media: what each input really is (``probe``), what each provider accepts (``limits``), what
must happen to it (``recipes``, pure), doing it with ffmpeg (``prepare``), the tools themselves
(``tools``) and content hashes (``hashing``)."""
