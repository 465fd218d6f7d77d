-- The boot-image tables of MAAS 2.1 to 3.0 (pgbootfs's test fixture, written from
-- what those versions hold): integer ids, text `extra`, kflavor, bootloader_type
-- and rolling, largefile.size; no base_image (MAAS 3.1 adds it).
CREATE TABLE maasserver_bootresource (
    id           serial PRIMARY KEY,
    created      timestamp with time zone NOT NULL,
    updated      timestamp with time zone NOT NULL,
    rtype        integer NOT NULL,
    name         character varying(255) NOT NULL,
    architecture character varying(255) NOT NULL,
    extra        text NOT NULL,
    kflavor      character varying(32),
    bootloader_type character varying(32),
    rolling      boolean NOT NULL,
    CONSTRAINT maasserver_bootresource_name_architecture_uniq UNIQUE (name, architecture)
);
CREATE TABLE maasserver_largefile (
    id         serial PRIMARY KEY,
    created    timestamp with time zone NOT NULL,
    updated    timestamp with time zone NOT NULL,
    sha256     character varying(64) NOT NULL UNIQUE,
    total_size bigint NOT NULL,
    content    oid NOT NULL,
    size       bigint NOT NULL
);
CREATE TABLE maasserver_bootresourceset (
    id          serial PRIMARY KEY,
    created     timestamp with time zone NOT NULL,
    updated     timestamp with time zone NOT NULL,
    version     character varying(255) NOT NULL,
    label       character varying(255) NOT NULL,
    resource_id integer NOT NULL
        REFERENCES maasserver_bootresource(id) DEFERRABLE INITIALLY DEFERRED,
    UNIQUE (resource_id, version)
);
CREATE TABLE maasserver_bootresourcefile (
    id              serial PRIMARY KEY,
    created         timestamp with time zone NOT NULL,
    updated         timestamp with time zone NOT NULL,
    filename        character varying(255) NOT NULL,
    filetype        character varying(20) NOT NULL,
    extra           text NOT NULL,
    largefile_id    integer NOT NULL
        REFERENCES maasserver_largefile(id) DEFERRABLE INITIALLY DEFERRED,
    resource_set_id integer NOT NULL
        REFERENCES maasserver_bootresourceset(id) DEFERRABLE INITIALLY DEFERRED,
    UNIQUE (resource_set_id, filename)
);
CREATE INDEX ON maasserver_bootresourceset (resource_id);
CREATE INDEX ON maasserver_bootresourcefile (largefile_id);
CREATE INDEX ON maasserver_bootresourcefile (resource_set_id);
CREATE INDEX ON maasserver_largefile (sha256 varchar_pattern_ops);
