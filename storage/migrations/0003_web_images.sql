-- Finished web images waiting for their download, where every process sharing the store can serve
-- them. On SQLite (one host) the web front keeps them in a folder instead; the table is here so the
-- storage operations read the same on both engines.
CREATE TABLE web_images (
    job_id      TEXT NOT NULL,
    image_index INTEGER NOT NULL,
    png         BLOB NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (job_id, image_index)
);
CREATE INDEX web_images_created ON web_images(created_at);
