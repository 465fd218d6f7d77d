-- The boot-image tables of MAAS 3.5 (pgbootfs's test fixture, written from what
-- 3.5 holds): the bytes moved to the region's disk (/var/lib/maas/image-storage),
-- so a file row carries its sha256 and size and there is no largefile table.
-- pgbootfs must refuse it clearly and write nothing.
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
    sha256          character varying(64) NOT NULL,
    size            bigint NOT NULL,
    resource_set_id bigint NOT NULL
        REFERENCES maasserver_bootresourceset(id) DEFERRABLE INITIALLY DEFERRED,
    UNIQUE (resource_set_id, filename)
);
CREATE INDEX ON maasserver_bootresourceset (resource_id);
CREATE INDEX ON maasserver_bootresourcefile (resource_set_id);
