// Offline Hugging Face cache resolution against a fake cache tree laid out as huggingface_hub does:
// <cache>/models--org--name/{refs/<branch>, snapshots/<commit>/...}.
#include <gtest/gtest.h>

#include <cstdlib>

#include "core/error.h"
#include "io/model_path.h"
#include "io_test_util.h"

namespace k2 {
namespace {

constexpr const char* kMain = "0123456789abcdef0123456789abcdef01234567";
constexpr const char* kOld = "89abcdef0123456789abcdef0123456789abcdef";

// Restores an environment variable at scope exit.
class ScopedEnv {
public:
    ScopedEnv(const char* name, const std::string& value) : m_name(name) {
        if (const char* old = std::getenv(name)) {
            m_old = old;
        }
        if (value.empty()) {
            ::unsetenv(name);
        } else {
            ::setenv(name, value.c_str(), 1);
        }
    }
    ~ScopedEnv() {
        if (m_old.has_value()) {
            ::setenv(m_name, m_old->c_str(), 1);
        } else {
            ::unsetenv(m_name);
        }
    }

private:
    const char* m_name;
    std::optional<std::string> m_old;
};

class HfCache : public ::testing::Test {
protected:
    void SetUp() override {
        m_hub = m_tmp.path() / "hf_home" / "hub";
        const fs::path repo = m_hub / "models--moonshotai--Kimi-K2-Instruct";
        for (const char* commit : {kMain, kOld}) {
            fs::create_directories(repo / "snapshots" / commit);
            test::write_file(repo / "snapshots" / commit / "config.json", "{}");
        }
        fs::create_directories(repo / "refs");
        test::write_file(repo / "refs" / "main", std::string(kMain));  // no newline, as huggingface_hub writes
        test::write_file(repo / "refs" / "v1", std::string(kOld) + "\n");
    }
    fs::path snapshot(const char* commit) const {
        return m_hub / "models--moonshotai--Kimi-K2-Instruct" / "snapshots" / commit;
    }
    static std::string error_of(const std::string& arg, const std::string& rev = "", const std::string& dir = "") {
        try {
            (void)resolve_model_path(arg, rev, dir);
        } catch (const Error& e) {
            return e.message();
        }
        return "";
    }

    test::TempDir m_tmp;
    fs::path m_hub;
};

TEST_F(HfCache, DirectoryIsUsedAsIs) {
    EXPECT_EQ(resolve_model_path(fixture_path("tiny-kimi-k2").string()), fixture_path("tiny-kimi-k2"));
}

TEST_F(HfCache, HubIdFromHfHome) {
    ScopedEnv hub_cache("HF_HUB_CACHE", "");
    ScopedEnv home("HF_HOME", (m_tmp.path() / "hf_home").string());
    EXPECT_EQ(hf_hub_cache_dir(), m_hub);
    EXPECT_EQ(resolve_model_path("moonshotai/Kimi-K2-Instruct"), snapshot(kMain));
}

TEST_F(HfCache, HfHubCacheWinsOverHfHome) {
    ScopedEnv hub_cache("HF_HUB_CACHE", m_hub.string());
    ScopedEnv home("HF_HOME", "/nonexistent");
    EXPECT_EQ(resolve_model_path("moonshotai/Kimi-K2-Instruct"), snapshot(kMain));
}

TEST_F(HfCache, DefaultCacheUnderHome) {
    ScopedEnv hub_cache("HF_HUB_CACHE", "");
    ScopedEnv home("HF_HOME", "");
    ScopedEnv xdg("XDG_CACHE_HOME", "");
    ScopedEnv user_home("HOME", "/home/someone");
    EXPECT_EQ(hf_hub_cache_dir(), fs::path("/home/someone/.cache/huggingface/hub"));
}

TEST_F(HfCache, RevisionAsBranchAndAsCommit) {
    EXPECT_EQ(resolve_model_path("moonshotai/Kimi-K2-Instruct", "v1", m_hub.string()), snapshot(kOld));
    EXPECT_EQ(resolve_model_path("moonshotai/Kimi-K2-Instruct", kOld, m_hub.string()), snapshot(kOld));
    EXPECT_EQ(resolve_model_path("moonshotai/Kimi-K2-Instruct", "main", m_hub.string()), snapshot(kMain));
}

TEST_F(HfCache, DownloadDirOverridesEnvironment) {
    ScopedEnv hub_cache("HF_HUB_CACHE", "/nonexistent");
    EXPECT_EQ(resolve_model_path("moonshotai/Kimi-K2-Instruct", "", m_hub.string()), snapshot(kMain));
}

TEST_F(HfCache, MissingModelSaysWhereItLookedAndWhatToDo) {
    const std::string msg = error_of("moonshotai/Kimi-K2-Thinking", "", m_hub.string());
    EXPECT_NE(msg.find((m_hub / "models--moonshotai--Kimi-K2-Thinking" / "refs" / "main").string()), std::string::npos)
        << msg;
    EXPECT_NE(msg.find((m_hub / "models--moonshotai--Kimi-K2-Thinking" / "snapshots" / "main").string()),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("huggingface-cli download moonshotai/Kimi-K2-Thinking"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

TEST_F(HfCache, MissingRevision) {
    const std::string msg = error_of("moonshotai/Kimi-K2-Instruct", "v9", m_hub.string());
    EXPECT_NE(msg.find("refs/v9"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--revision v9"), std::string::npos) << msg;
}

TEST_F(HfCache, RefToAMissingSnapshot) {
    fs::remove_all(snapshot(kMain));
    const std::string msg = error_of("moonshotai/Kimi-K2-Instruct", "", m_hub.string());
    EXPECT_NE(msg.find(snapshot(kMain).string()), std::string::npos) << msg;
}

TEST_F(HfCache, SnapshotWithoutConfig) {
    fs::remove(snapshot(kMain) / "config.json");
    const std::string msg = error_of("moonshotai/Kimi-K2-Instruct", "", m_hub.string());
    EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
}

TEST_F(HfCache, PathsThatAreNotHubIds) {
    for (const std::string arg : {"./no/such/dir", "/abs/missing", "a/b/c", "nohubid", "../x"}) {
        const std::string msg = error_of(arg, "", m_hub.string());
        EXPECT_NE(msg.find("no such directory"), std::string::npos) << arg << ": " << msg;
    }
    EXPECT_NE(error_of("moonshotai/Kimi-K2-Instruct", "../../etc", m_hub.string()).find("invalid revision"),
              std::string::npos);
}

}  // namespace
}  // namespace k2
