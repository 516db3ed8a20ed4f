/* Certificates made at run time with OpenSSL: a CA, leaves it signs (with subjectAltName
 * names), written as PEM for ph_tls_ctx_new(). Shared by the TLS unit tests and fuzz target. */
#ifndef PH_CERTS_H
#define PH_CERTS_H

#include <stdio.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* An EC P-256 key, or NULL. */
static EVP_PKEY *certs_key(void)
{
    return EVP_EC_gen("P-256");
}

static int certs_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_nconf_nid(NULL, &v3, nid, value);
    int ok = e != NULL && X509_add_ext(x, e, -1) == 1;
    X509_EXTENSION_free(e);
    return ok;
}

/* A certificate for key named CN=cn (O=pronghorn tests), valid from an hour ago for a week:
 * a CA signing itself when issuer is NULL, else a leaf for servers and clients signed by
 * issuer's ikey. san: "DNS:a.test,DNS:*.b.test" or NULL. NULL on failure. */
static X509 *certs_make(EVP_PKEY *key, const char *cn, const char *san, X509 *issuer,
                        EVP_PKEY *ikey, long serial)
{
    X509 *x = X509_new();
    if (x == NULL)
        return NULL;
    X509 *signer = issuer ? issuer : x;
    X509_NAME *name = X509_get_subject_name(x);
    int ok = X509_set_version(x, X509_VERSION_3) == 1 &&
             ASN1_INTEGER_set(X509_get_serialNumber(x), serial) == 1 &&
             X509_gmtime_adj(X509_getm_notBefore(x), -3600) != NULL &&
             X509_gmtime_adj(X509_getm_notAfter(x), 7 * 86400) != NULL &&
             X509_set_pubkey(x, key) == 1 &&
             X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                        (const unsigned char *)"pronghorn tests", -1, -1, 0) == 1 &&
             X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                        0) == 1 &&
             X509_set_issuer_name(x, X509_get_subject_name(signer)) == 1 &&
             certs_ext(x, signer, NID_subject_key_identifier, "hash");
    if (ok && issuer == NULL)
        ok = certs_ext(x, signer, NID_basic_constraints, "critical,CA:TRUE") &&
             certs_ext(x, signer, NID_key_usage, "critical,keyCertSign,cRLSign");
    else if (ok)
        ok = certs_ext(x, signer, NID_basic_constraints, "critical,CA:FALSE") &&
             certs_ext(x, signer, NID_key_usage, "critical,digitalSignature") &&
             certs_ext(x, signer, NID_ext_key_usage, "serverAuth,clientAuth") &&
             certs_ext(x, signer, NID_authority_key_identifier, "keyid:always");
    if (ok && san)
        ok = certs_ext(x, signer, NID_subject_alt_name, san);
    if (!ok || X509_sign(x, issuer ? ikey : key, EVP_sha256()) <= 0) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* Writes n certificates (a chain: the leaf first) to path as PEM. 1 or 0. */
static int certs_write_chain(const char *path, X509 *const *chain, size_t n)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return 0;
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++)
        ok = PEM_write_X509(f, chain[i]) == 1;
    return fclose(f) == 0 && ok;
}

/* Writes key to path as PKCS#8 PEM, encrypted (AES-256-CBC) when password is not NULL. 1 or 0. */
static int certs_write_key(const char *path, EVP_PKEY *key, const char *password)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return 0;
    int ok = PEM_write_PrivateKey(f, key, password ? EVP_aes_256_cbc() : NULL, NULL, 0, NULL,
                                  (void *)password) == 1;
    return fclose(f) == 0 && ok;
}

#endif
