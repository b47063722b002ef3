/*
 * Test fixture: the two key-lookup hooks that Debian's cst build expects from NXP's small
 * "libpkey" but leaves weak-undefined (so every signing run segfaults without them).
 *
 *   get_key_file:             crts/X_crt.pem -> keys/X_key.pem
 *   get_passcode_to_key_file: first line of key_pass.txt in the key's folder (keys/)
 *
 * Loaded with LD_PRELOAD together with libcrypto.so.3 by the wrapper script.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static void replace_first(char *s, const char *from, const char *to)
{
    char buf[1024];
    char *p = strstr(s, from);
    if (p == NULL)
        return;
    snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(p - s), s, to, p + strlen(from));
    strcpy(s, buf);
}

int32_t get_key_file(const char *cert_file, char *key_file)
{
    strcpy(key_file, cert_file);
    replace_first(key_file, "crts/", "keys/");
    replace_first(key_file, "_crt.", "_key.");
    return 0;
}

int get_passcode_to_key_file(char *buf, int size, int rwflag, void *userdata)
{
    char path[1024] = "";
    const char *file = (const char *)userdata;
    const char *slash = file ? strrchr(file, '/') : NULL;
    FILE *fp;
    (void)rwflag;
    if (slash != NULL)
        snprintf(path, sizeof(path), "%.*s", (int)(slash - file + 1), file);
    replace_first(path, "crts/", "keys/");
    if (path[0] == '\0')
        strcpy(path, "keys/");
    strncat(path, "key_pass.txt", sizeof(path) - strlen(path) - 1);
    fp = fopen(path, "r");
    if (fp == NULL)
        return 0;
    if (fgets(buf, size, fp) == NULL) {
        fclose(fp);
        return 0;
    }
    fclose(fp);
    buf[strcspn(buf, "\r\n")] = '\0';
    return (int)strlen(buf);
}
