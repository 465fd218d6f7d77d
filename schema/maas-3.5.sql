-- The boot-image tables of MAAS 3.5, as MAAS's own test database creates them:
-- canonical/maas branch 3.5 (commit 051f4f00a11d0556fb6fc4338c9ea915a6f7e2b7),
-- src/maasserver/testing/initial.maas_test.sql. Only the four tables pgbootfs
-- reads, with their columns in MAAS's order, keys, foreign keys and indexes.
-- This is the schema right after migration 0308 (remove_images_from_db): the file
-- row gained sha256 and size (copied from its largefile) and largefile_id became
-- nullable; the largefile table stays, and MAAS's one-time start-up export moves
-- each large object into the image storage and clears largefile_id. The dump on
-- this branch predates the 3.5.x backport of migration 0330, which adds
--   filename_on_disk character varying(64) NOT NULL (blank allowed)
-- to maasserver_bootresourcefile and sets it to the sha256 of every file row.
CREATE TABLE maasserver_bootresource (
    id              bigserial PRIMARY KEY,
    created         timestamp with time zone NOT NULL,
    updated         timestamp with time zone NOT NULL,
    rtype           integer NOT NULL,
    name            character varying(255) NOT NULL,
    architecture    character varying(255) NOT NULL,
    extra           jsonb NOT NULL,
    kflavor         character varying(32),
    bootloader_type character varying(32),
    rolling         boolean NOT NULL,
    base_image      character varying(255) NOT NULL,
    UNIQUE (name, architecture)
);
CREATE TABLE maasserver_largefile (
    id         bigserial PRIMARY KEY,
    created    timestamp with time zone NOT NULL,
    updated    timestamp with time zone NOT NULL,
    sha256     character varying(64) NOT NULL UNIQUE,
    total_size bigint NOT NULL,
    content    oid NOT NULL,
    size       bigint NOT NULL
);
CREATE TABLE maasserver_bootresourceset (
    id          bigserial PRIMARY KEY,
    created     timestamp with time zone NOT NULL,
    updated     timestamp with time zone NOT NULL,
    version     character varying(255) NOT NULL,
    label       character varying(255) NOT NULL,
    resource_id bigint NOT NULL
        REFERENCES maasserver_bootresource(id) DEFERRABLE INITIALLY DEFERRED,
    UNIQUE (resource_id, version)
);
CREATE TABLE maasserver_bootresourcefile (
    id              bigserial PRIMARY KEY,
    created         timestamp with time zone NOT NULL,
    updated         timestamp with time zone NOT NULL,
    filename        character varying(255) NOT NULL,
    filetype        character varying(20) NOT NULL,
    extra           jsonb NOT NULL,
    largefile_id    bigint
        REFERENCES maasserver_largefile(id) DEFERRABLE INITIALLY DEFERRED,
    resource_set_id bigint NOT NULL
        REFERENCES maasserver_bootresourceset(id) DEFERRABLE INITIALLY DEFERRED,
    sha256          character varying(64) NOT NULL,
    size            bigint NOT NULL,
    UNIQUE (resource_set_id, filename)
);
CREATE INDEX ON maasserver_bootresourcefile (sha256);
CREATE INDEX ON maasserver_bootresourcefile (largefile_id);
CREATE INDEX ON maasserver_bootresourcefile (resource_set_id);
CREATE INDEX ON maasserver_bootresourceset (resource_id);
CREATE INDEX ON maasserver_largefile (sha256 varchar_pattern_ops);
